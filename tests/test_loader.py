import time

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from perfkit.loader import InstrumentedLoader


def slow_items(n, delay_s):
    for i in range(n):
        time.sleep(delay_s)
        yield i


def test_blocked_time_of_a_slow_loader():
    loader = InstrumentedLoader(slow_items(5, 0.05))
    assert list(loader) == [0, 1, 2, 3, 4]
    waits = [a.wait_s for a in loader.arrivals]
    assert all(0.045 <= w <= 0.2 for w in waits)
    arrive = [a.t_arrive_s for a in loader.arrivals]
    assert all(b > a for a, b in zip(arrive, arrive[1:]))
    assert loader.arrivals[0].queue_depth is None  # a plain generator exposes no queue


def test_consumer_time_is_not_counted_as_wait():
    loader = InstrumentedLoader(iter(range(4)))
    for _ in loader:
        time.sleep(0.03)  # the consumer is slow, the source is instant
    assert all(a.wait_s < 0.01 for a in loader.arrivals)


class SlowDataset(Dataset):
    def __len__(self):
        return 12

    def __getitem__(self, i):
        time.sleep(0.01)
        return torch.tensor([i])


@pytest.mark.slow
def test_dataloader_queue_fills_when_consumer_is_slow():
    dl = DataLoader(SlowDataset(), batch_size=None, num_workers=2, prefetch_factor=4)
    loader = InstrumentedLoader(dl)
    got = []
    for item in loader:
        got.append(int(item))
        time.sleep(0.08)
    assert got == list(range(12))
    depths = [a.queue_depth for a in loader.arrivals]
    assert all(d is not None for d in depths)
    assert max(depths) >= 2  # workers ran ahead while the consumer was busy
    assert all(a.wait_s < 0.05 for a in loader.arrivals[3:])


def test_a_block_beyond_the_plan_fails_the_run(small_fasta):
    """Blocks the planning scan did not count would belong to no rank: the loader refuses them."""
    from perfkit.workload.data import PackedFrames, Shard

    frames = PackedFrames(small_fasta, token_budget=4096, block_reads=4, shard=Shard((0,), planned_blocks=1))
    with pytest.raises(RuntimeError, match="more than the 1 blocks"):
        list(frames)
    assert list(
        PackedFrames(small_fasta, token_budget=4096, block_reads=10**6, shard=Shard((0,), planned_blocks=1))
    )


def _spy_ranges(monkeypatch):
    """Record every byte range read_blocks_at parses; fail on any whole-file parse."""
    from perfkit.workload import data, fasta

    ranges = []
    real = fasta.read_fasta_range

    def spy(path, start, end):
        ranges.append((start, end))
        return real(path, start, end)

    def whole_file(*args, **kwargs):
        raise AssertionError("a worker parsed the whole file")

    monkeypatch.setattr(fasta, "read_fasta_range", spy)
    monkeypatch.setattr(data, "read_fasta", whole_file)
    return ranges


def test_each_worker_parses_only_its_own_blocks(small_fasta, monkeypatch):
    """With the plan's byte offsets, worker w of W reads exactly its blocks' bytes, nothing else."""
    from perfkit.workload.data import PackedFrames, Shard, block_offsets, read_blocks

    offsets = block_offsets(small_fasta, block_reads=4)
    expected = {block: records for block, _, records in read_blocks(small_fasta, 4)}  # the whole-file parser
    assert len(expected) == len(offsets) - 1 >= 6
    rank_blocks = tuple(range(1, len(expected) - 1))  # a rank's contiguous run, not starting at block 0
    shard = Shard(rank_blocks, planned_blocks=len(expected), offsets=tuple(offsets.tolist()))
    ranges = _spy_ranges(monkeypatch)
    seen = {}
    for worker in range(3):
        ranges.clear()
        got = list(
            PackedFrames(small_fasta, token_budget=4096, block_reads=4, shard=shard)._my_blocks(worker, 3)
        )
        mine = rank_blocks[worker::3]
        assert [block for block, _, _ in got] == list(mine)
        assert ranges == [(int(offsets[b]), int(offsets[b + 1])) for b in mine]  # its own bytes only
        for block, first, records in got:
            assert first == block * 4 and records == expected[block]
            seen[block] = worker
    assert sorted(seen) == list(rank_blocks)  # every block of the rank, each by one worker


def test_byte_ranges_and_the_stream_give_the_same_batches(small_fasta, tmp_path):
    """Plain input read by byte ranges and the same reads gzipped (parsed as a stream) pack the same frames."""
    import gzip

    import numpy as np

    from perfkit.workload.data import PackedFrames, Shard, block_offsets

    zipped = tmp_path / "reads.fa.gz"
    zipped.write_bytes(gzip.compress(small_fasta.read_bytes()))
    assert block_offsets(zipped, block_reads=4) is None  # gzip cannot be cut by bytes
    offsets = tuple(block_offsets(small_fasta, block_reads=4).tolist())

    def keys(path, shard):
        batches = PackedFrames(path, token_budget=512, block_reads=4, shard=shard)
        return np.sort(np.concatenate([b["keys"].numpy() for b in batches if b.get("sequences")]))

    by_bytes = keys(small_fasta, Shard(offsets=offsets))
    assert len(by_bytes) and np.array_equal(by_bytes, keys(zipped, Shard()))


def test_a_changed_input_is_caught_by_its_byte_ranges(small_fasta):
    from perfkit.errors import UserError
    from perfkit.workload.data import PackedFrames, Shard, block_offsets

    offsets = block_offsets(small_fasta, block_reads=4)
    small_fasta.write_bytes(small_fasta.read_bytes()[: int(offsets[-2]) + 10])  # cut inside the last block
    frames = PackedFrames(
        small_fasta, token_budget=4096, block_reads=4, shard=Shard(offsets=tuple(offsets.tolist()))
    )
    with pytest.raises(UserError, match="shorter than when its blocks were planned"):
        list(frames._my_blocks(0, 1))


def test_the_planning_scan_refuses_an_id_repeated_in_another_block(tmp_path):
    """Workers parse only their own blocks, so the planning scan checks ids across the whole file."""
    from perfkit.errors import UserError
    from perfkit.workload.data import block_offsets

    reads = [f">r{i} some description\nACGTACGTAC\n" for i in range(40)]
    path = tmp_path / "reads.fa"
    path.write_text("".join(reads))
    assert len(block_offsets(path, block_reads=4)) == 11  # unique ids: 10 blocks
    path.write_text("".join(reads) + ">r7\tother\nACGT\n")  # r7 again, eight blocks later, tab-separated
    with pytest.raises(UserError, match=r"duplicate record id 'r7' \(records 8 and 41\)"):
        block_offsets(path, block_reads=4)
    path.write_text("".join(reads[:-1]) + ">r3")  # the last header at the very end of the file, no newline
    with pytest.raises(UserError, match="duplicate record id 'r3'"):
        block_offsets(path, block_reads=4)
    path.write_text(">r1\nAC\n>r10\nAC\n>r1x\nAC\n")  # prefixes of each other are different ids
    assert len(block_offsets(path, block_reads=1)) == 4


def test_a_shard_knows_its_reads_before_any_is_translated(tmp_path):
    from conftest import orf_fasta
    from perfkit.workload.data import Shard, block_offsets

    fasta = orf_fasta(tmp_path / "s.fa", 23)
    offsets = tuple(block_offsets(fasta, block_reads=5).tolist())  # blocks of 5, 5, 5, 5, 3 reads
    assert Shard(offsets=offsets).reads(fasta, 5) == 23
    assert Shard(blocks=(0, 1), offsets=offsets).reads(fasta, 5) == 10
    assert Shard(blocks=(3, 4), offsets=offsets).reads(fasta, 5) == 8  # the short last block counted
    capped = tuple(block_offsets(fasta, block_reads=5, max_reads=12).tolist())
    assert Shard(offsets=capped).reads(fasta, 5) == 12
    assert Shard().reads(fasta, 5) is None  # gzip or chunked input: no total up front
