"""perfkit.workload.plan: contiguous runs of blocks, one per rank."""

import numpy as np


def test_contiguous_blocks_cut_at_equal_shares():
    from perfkit.workload.plan import contiguous_blocks

    plan = contiguous_blocks(np.array([10, 10, 10, 10, 10, 10, 10, 30]), 2)
    assert [p.tolist() for p in plan] == [[0, 1, 2, 3, 4], [5, 6, 7]]  # 50 | 50
    plan = contiguous_blocks(np.ones(10, dtype=np.int64), 3)
    assert np.concatenate(plan).tolist() == list(range(10)) and [len(p) for p in plan] == [3, 4, 3]
    assert [len(p) for p in contiguous_blocks(np.array([5]), 2)] == [0, 1] or [
        len(p) for p in contiguous_blocks(np.array([5]), 2)
    ] == [1, 0]  # fewer blocks than ranks: one empty
