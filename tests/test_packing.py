import numpy as np
import pytest

from perfkit.errors import UserError
from perfkit.packing import TokenBudgetPacker, efficiency, plan_packed


def _stream(lengths, chunk=1000, seed=0, with_tokens=False):
    keys = np.arange(len(lengths))
    for s in range(0, len(lengths), chunk):
        k, lens = keys[s : s + chunk], lengths[s : s + chunk]
        if with_tokens:
            # token value = key, so every token tells which sequence it belongs to
            yield k, lens, np.repeat(k, lens)
        else:
            yield k, lens


def test_hand_computed_packing():
    # budget 10, sorted 6,5,5,4,3: [6] then the shortest (3) tops it up; [5,5]; [4] is the end-of-stream remainder
    lengths = np.array([5, 6, 3, 4, 5])
    batches, carried = plan_packed(lengths, 10, final=True)
    assert carried.size == 0
    got = sorted(sorted(lengths[b].tolist()) for b in batches)
    assert got == [[3, 6], [4], [5, 5]]
    packer = TokenBudgetPacker(budget=10, buffer_size=100)
    out = list(packer.pack([(np.arange(5), lengths)]))
    fig = efficiency(out)
    assert fig["batches"] == 3
    assert fig["packing_efficiency"] == pytest.approx(23 / 30)
    assert [b.packing_efficiency for b in out] == pytest.approx([0.9, 1.0, 0.4])
    assert fig["padding_waste"] == 0.0


@pytest.mark.parametrize("layout", ["packed", "padded"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_id_exactly_once(layout, seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 700, size=20_000)
    packer = TokenBudgetPacker(budget=2048, buffer_size=int(rng.integers(1, 3000)), layout=layout)
    seen = []
    for b in packer.pack(_stream(lengths, chunk=int(rng.integers(1, 5000)), with_tokens=True)):
        seen.append(b.keys)
        assert b.slot_tokens <= b.budget
        if layout == "packed":
            assert b.tokens.shape == (b.real_tokens,)
            assert (np.diff(b.cu_seqlens) == b.lengths).all()
            assert (b.tokens == np.repeat(b.keys, b.lengths)).all()
        else:
            assert b.tokens.shape == (b.num_sequences, b.max_len)
            for row, key, n in zip(b.tokens, b.keys, b.lengths):
                assert (row[:n] == key).all() and (row[n:] == 0).all()
        assert (lengths[b.keys] == b.lengths).all()
    seen = np.concatenate(seen)
    assert seen.size == lengths.size
    assert np.array_equal(np.sort(seen), np.arange(lengths.size))


def test_oversize_error_names_the_sequence():
    packer = TokenBudgetPacker(budget=100)
    with pytest.raises(UserError, match="sequence 7 has 101 tokens"):
        packer.add([6, 7], [100, 101])


def test_oversize_truncate_keeps_every_id():
    packer = TokenBudgetPacker(budget=100, on_oversize="truncate")
    lengths = np.array([50, 250, 100, 30])
    out = list(packer.pack([(np.arange(4), lengths, np.repeat(np.arange(4), lengths))]))
    keys = np.sort(np.concatenate([b.keys for b in out]))
    assert keys.tolist() == [0, 1, 2, 3]
    assert packer.truncated == 1
    got = {int(k): int(n) for b in out for k, n in zip(b.keys, b.lengths)}
    assert got == {0: 50, 1: 100, 2: 100, 3: 30}


def test_viral_lengths_fill_batches_and_no_mid_stream_partials():
    rng = np.random.default_rng(0)
    lengths = rng.integers(12, 103, size=200_000)  # 10-100 aa + BOS/EOS
    packer = TokenBudgetPacker(budget=16384, buffer_size=2000)
    out = list(packer.pack(_stream(lengths, chunk=500)))
    # only the final batch may be partial; all others leave a gap smaller than the shortest sequence
    assert all(b.real_tokens > 16384 - 12 for b in out[:-1])
    assert efficiency(out)["packing_efficiency"] > 0.99


def test_padded_batches_respect_budget_and_report_waste():
    lengths = np.array([10, 8, 8, 2])
    packer = TokenBudgetPacker(budget=20, layout="padded")
    out = list(packer.pack([(np.arange(4), lengths)]))
    assert [b.lengths.tolist() for b in out] == [[10, 8], [8, 2]]
    assert out[0].padding_waste == pytest.approx(2 / 20)
    assert out[1].padding_waste == pytest.approx(6 / 16)
    assert efficiency(out)["packing_efficiency"] == pytest.approx(28 / 40)


@pytest.mark.parametrize(
    "kwargs", [{"budget": 0}, {"budget": 10, "buffer_size": 0}, {"budget": 10, "layout": "x"}]
)
def test_bad_settings_are_user_errors(kwargs):
    with pytest.raises(UserError):
        TokenBudgetPacker(**kwargs)
