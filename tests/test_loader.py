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
    assert list(PackedFrames(small_fasta, token_budget=4096, block_reads=10**6, shard=Shard((0,), planned_blocks=1)))
